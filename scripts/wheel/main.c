/* The C entry point of the ckstore executable when scripts/wheel/link-with-zig links it: swiftc names the
 * Swift entry point ckstore_main and asks the linker for main=ckstore_main, which zig cc does not take. */
int ckstore_main(int argc, char **argv);

int main(int argc, char **argv) { return ckstore_main(argc, argv); }
