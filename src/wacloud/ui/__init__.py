"""The web dashboard at `/ui` (`wacloud.ui.app`)."""
