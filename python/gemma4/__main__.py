"""`python -m gemma4 <command>`: see gemma4/cli.py."""
import sys

from gemma4.cli import main

sys.exit(main())
