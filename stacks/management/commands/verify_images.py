from stacks.management.commands._images import ImageCommand


class Command(ImageCommand):
    help = "Image pipeline: verify the catalog's component versions (cached by recipe hash)."
    steps = ("verify",)
