"""Drop-in compatibility with two earlier wire protocols (Enigma Protocol v0.3, the Enigmo
Flutter/Dart WebSocket server), each off by default and stored through the native queue."""
