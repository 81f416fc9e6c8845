"""The simulation harness: scenarios, the orchestrator, Locust users, recording, budgets, reports.

Only `locustfile` and `users` import Locust (and so gevent); everything else runs under asyncio
or plain Python, and the orchestrator talks to Locust and the server as separate processes.
"""
