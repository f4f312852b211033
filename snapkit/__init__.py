"""snapkit: commit-keyed, encrypted, deduplicated snapshots of an app's database and code."""

__version__ = "0.1.0"

__all__ = ["Project", "__version__"]


def __getattr__(name: str):
    # Lazy so `snapkit --version` and the hook do not import the whole stack.
    if name == "Project":
        from snapkit.project import Project

        return Project
    raise AttributeError(name)
