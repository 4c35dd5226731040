from stacks.management.commands._images import ImageCommand


class Command(ImageCommand):
    help = "Image pipeline: build, verify and publish every catalog version (each step cached)."
    steps = ("build", "verify", "publish")
