#include <stdio.h>
int main(void) { puts("metatrain " METATRAIN_VERSION); return 0; }
