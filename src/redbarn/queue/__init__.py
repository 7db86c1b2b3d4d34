"""The scheduler core: all state in Redis, one Lua script per transition. No grpc here."""
