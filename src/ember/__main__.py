"""`python -m ember ...` is the `ember` command (torchrun uses this form: `torchrun -m ember train gpt ...`)."""

from ember.cli.main import main

if __name__ == "__main__":
    main()
