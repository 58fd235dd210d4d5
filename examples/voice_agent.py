"""A voice agent's link on litechan: simulated users, two gateways and two workers.

    python examples/voice_agent.py                        # one process, memory://
    python examples/voice_agent.py --sessions 1000        # a thousand users
    python examples/voice_agent.py --backend redis://127.0.0.1:6379/0 --chaos

The code is in ``examples/voice/``; ``--help`` lists the options.
"""

import sys

from voice.run import main

if __name__ == "__main__":
    sys.exit(main())
