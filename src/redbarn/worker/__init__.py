"""The worker: Synchronize loop, executor chain, input cache and runner."""
