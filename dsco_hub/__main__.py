"""`python -m dsco_hub` (also `accelerate launch -m dsco_hub` and `torchrun -m dsco_hub`)."""

from dsco_hub.cli import main

if __name__ == "__main__":
    main()
