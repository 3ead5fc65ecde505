"""The first-party web client (docs/web-client.md): plain files shipped in `static/`, served at
`/` by the API process, talking to the public API only."""
