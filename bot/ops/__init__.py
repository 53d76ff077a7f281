"""Running in production: logging with secrets redacted, Prometheus metrics, systemd notify."""
