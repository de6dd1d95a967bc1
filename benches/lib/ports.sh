# Sourced by the bench scripts that start servers.

# listening PORT: whether something accepts connections on 127.0.0.1:PORT. A server left over
# (another run's, or one that did not exit) would answer in place of the one a script starts.
listening() {
  (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null
}
