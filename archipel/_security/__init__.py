"""Who may do what: the deployment's secret, per-edge call credentials, broker logins."""
