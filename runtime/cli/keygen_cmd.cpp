// `mycel keygen --out FILE [--id N]`: a fresh swarm key for the bootstrap handshake
// (transport.key_file; docs/security.md). The file is created with mode 0600 and never
// overwritten; for rotation, append the lines of a second file with another id.
#include <cstdio>
#include <memory>
#include <string>

#include "runtime/cli/commands.h"
#include "transport/transport.h"

namespace mycel::cli {

void add_keygen_command(CLI::App& app, Common&) {
  auto* cmd = app.add_subcommand("keygen", "write a fresh swarm key file (mode 0600) for transport.key_file");
  auto out = std::make_shared<std::string>();
  auto id = std::make_shared<uint32_t>(1);
  cmd->add_option("--out", *out, "key file to create (must not exist)")->required();
  cmd->add_option("--id", *id, "key id (several ids in one file allow rotation)")->check(CLI::Range(1u, 0xffffffffu));
  cmd->callback([=] {
    Status s = transport::make_key_file(*out, *id);
    if (!s.is_ok()) {
      std::fprintf(stderr, "mycel keygen: %s\n", s.message().c_str());
      throw CLI::RuntimeError(1);
    }
    std::fprintf(stderr, "mycel keygen: wrote key %u to %s (mode 0600); set transport.key_file: %s on every peer\n",
                 *id, out->c_str(), out->c_str());
  });
}

}  // namespace mycel::cli
