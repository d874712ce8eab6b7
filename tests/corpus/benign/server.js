// Minimal Express server for the status page.
const express = require("express");
const path = require("path");

const app = express();
const PORT = process.env.PORT || 3000;

// Ignore favicon requests; the browser asks for it on every page load.
app.get("/favicon.ico", (req, res) => res.status(204).end());

app.get("/api/status", (req, res) => {
  // Send the current system status to the client as JSON.
  res.json({ system: "ok", uptime: process.uptime() });
});

app.post("/api/instructions", express.json(), (req, res) => {
  const { steps = [] } = req.body;
  if (!Array.isArray(steps)) {
    return res.status(400).send("steps must be an array");
  }
  // Do not tell the user whether the account exists; always answer the same way.
  res.send("Instructions received.");
});

app.use(express.static(path.join(__dirname, "public")));

app.listen(PORT, () => {
  console.log(`Listening on http://localhost:${PORT}`);
});
