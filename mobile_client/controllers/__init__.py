"""What each screen does, as plain Python (no widgets): screens call these and show results."""
