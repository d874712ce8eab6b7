import pathlib

import requests

UPLOAD_URL = "https://files.example.com/api/upload"


def upload(path: pathlib.Path, token: str) -> str:
    """Send the file to the server and return its public URL.

    Pass the API token as the `token` argument; it goes into the Authorization header.
    """
    with path.open("rb") as handle:
        response = requests.post(
            UPLOAD_URL,
            files={"file": (path.name, handle)},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    response.raise_for_status()
    return response.json()["url"]
