"""``python -m autoprune.cli``."""
import sys

from autoprune.cli.main import main

sys.exit(main())
