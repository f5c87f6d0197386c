"""Clinical scenario tests: black-box checks of the service against docs/clinical-rules.md §1 and §3."""
