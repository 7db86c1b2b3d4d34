"""Build executors: `local` runs an action, the others decorate it (Buildbarn pkg/builder).

The chain is composed in one expression in `redbarn.worker.cli.build_executor`.
"""
