"""`python -m sparsevlm.bench`: the bench's command line (`sparsevlm.bench.command`)."""
import sys

from .command import main

sys.exit(main())
