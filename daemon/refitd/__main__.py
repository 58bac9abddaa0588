"""``python -m refitd ...`` is the ``refitd`` command (used by ``refitd demo`` and the tests)."""
import sys

from .cli import main

sys.exit(main())
