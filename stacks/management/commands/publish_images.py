from stacks.management.commands._images import ImageCommand


class Command(ImageCommand):
    help = "Image pipeline: publish the catalog's component versions (cached by recipe hash)."
    steps = ("publish",)
