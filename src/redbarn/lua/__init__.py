"""Lua scripts, one per state transition; loaded by `redbarn.queue.scripts`."""
