"""Clinical scenario tests: black-box checks of the service against clinical.md §1 and §3."""
