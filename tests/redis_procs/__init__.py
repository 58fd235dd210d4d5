"""Child processes for the cross-process Redis fault tests, and the test-side harness.

Each child is a small script run as ``python -m redis_procs.<name> '<json config>'`` with
``tests/`` on ``PYTHONPATH``. It reports progress as JSON lines on stdout, prefixed with ``@@``
(anything else, say a log line, is ignored), and stops cleanly on a ``stop`` line on stdin or at
stdin's end. :mod:`redis_procs.children` starts them and waits on their events.
"""
