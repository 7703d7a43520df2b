"""The course's helpers: settings for the notebooks (small and full mode) and the widget explorers."""
