"""ds_plugin.spec"""
