package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
	"time"
)

// Instruction is one step of a deployment plan.
type Instruction struct {
	Name    string        `json:"name"`
	Command string        `json:"command"`
	Timeout time.Duration `json:"timeout"`
	// IgnoreFailure lets the plan continue when this step fails.
	IgnoreFailure bool `json:"ignore_failure"`
}

func handlePlan(w http.ResponseWriter, r *http.Request) {
	var steps []Instruction
	if err := json.NewDecoder(r.Body).Decode(&steps); err != nil {
		http.Error(w, "bad plan: "+err.Error(), http.StatusBadRequest)
		return
	}
	for _, s := range steps {
		log.Printf("queued %s (ignore failure: %v)", s.Name, s.IgnoreFailure)
	}
	w.WriteHeader(http.StatusAccepted)
}

func main() {
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = ":8080"
	}
	http.HandleFunc("/plan", handlePlan)
	log.Printf("system ready on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
