import sys

from autodiff_optuna.cli import main

sys.exit(main())
