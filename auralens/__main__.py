"""``python -m auralens ...`` (what ``accelerate launch -m auralens`` and ``torchrun -m auralens`` run)."""

from auralens.cli import main

if __name__ == "__main__":
    main()
