"""`python -m textdvae ...` is the `textdvae` command."""

import sys

from .cli import main

sys.exit(main())
