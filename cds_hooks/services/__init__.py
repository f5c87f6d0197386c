"""The CDS services: what a service is (base), each hook's service, and the registry all entry points read."""
