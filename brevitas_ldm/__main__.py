import sys

from brevitas_ldm.cli import main

sys.exit(main())
