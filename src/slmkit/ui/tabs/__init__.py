"""One module per tab; each has `build(board: Board) -> None`, called inside its `gr.Tab`."""
