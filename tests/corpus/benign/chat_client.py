"""A thin client for a chat-completions style API, used by the support bot."""

import json
import os
import urllib.request

API_URL = "https://api.example.com/v1/chat/completions"
SYSTEM_PROMPT = "You are a helpful assistant for ACME support. Answer briefly."


def ask(question: str, history: list[dict[str, str]] | None = None) -> str:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    messages += history or []
    messages.append({"role": "user", "content": question})
    body = json.dumps({"model": "small-1", "messages": messages}).encode()
    request = urllib.request.Request(
        API_URL,
        data=body,
        headers={
            "Authorization": f"Bearer {os.environ['ACME_API_KEY']}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        reply = json.load(response)
    return reply["choices"][0]["message"]["content"]


if __name__ == "__main__":
    print(ask("How do I reset my password?"))
