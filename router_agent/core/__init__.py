"""The functional core: pure code over plain data and an injected clock.

Nothing here opens a socket, sleeps or reads the wall clock; every function takes ``now``
(seconds, monotonic) where time matters, so the core is deterministic and testable in
microseconds. The agent (``router_agent.agent``) is the imperative shell around it.
"""
