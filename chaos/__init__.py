"""The fault-injection run of issue 14 (`make chaos`): chaos.run starts the processes, posts
the planned events (chaos.plan) and injects the faults (chaos.faults); chaos.checker gives
the verdict."""
