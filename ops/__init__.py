"""The top floor: what assembles and operates the rest. The CLI, the demo, the embedded
Redis, the worker class, doctor and metrics. It may import every other package; nothing
imports it."""
