"""Cross-cutting infrastructure: database, errors, security, throttles, logging."""
