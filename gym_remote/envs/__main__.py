"""``python -m gym_remote.envs tasks ENV_ID``: print an adapter's task list as JSON.

The server runs this in a simulator's own interpreter to answer ``tasks`` requests.
"""

import json
import sys

from gym_remote.envs import list_tasks


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] != "tasks":
        sys.exit("usage: python -m gym_remote.envs tasks ENV_ID")
    json.dump(list_tasks(sys.argv[2]), sys.stdout)


if __name__ == "__main__":
    main()
