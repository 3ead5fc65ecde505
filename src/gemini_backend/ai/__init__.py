"""AI providers behind one small interface, and the conversation sent to them."""
