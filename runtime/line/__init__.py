"""Talking to the line (issue 17): the PLC trigger/result handshake (handshake.py) and its adapters
(Modbus TCP, MQTT). The adapters' libraries are optional: ``pip install 'protospect[line]'``."""
