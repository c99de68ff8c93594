"""The example tasks, one module per domain. `sluice.app.TASK_MODULES` lists them."""
