//! A Shared tenant's client and role on the platform's shared Mosquitto (dynamic security).
