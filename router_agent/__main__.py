import sys

from router_agent.cli import main

sys.exit(main())
