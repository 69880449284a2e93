"""lade-tf: LADE and PC Softmax for long-tailed classification under label shift.

Importing the package changes nothing in the process: settings such as TensorFlow's oneDNN
switch are made where a process starts (`lade_tf.process_settings`).
"""
