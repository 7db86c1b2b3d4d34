"""The stateless gRPC frontend: REAPI for clients, Synchronize for workers."""
