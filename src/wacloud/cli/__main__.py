"""`python -m wacloud.cli`."""

from wacloud.cli import main

main()
