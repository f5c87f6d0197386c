"""The CDS Hooks 2.0 protocol: the HTTP app and its routes, request models, prefetch and the FHIR client."""
